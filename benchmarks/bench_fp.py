"""FP restore speed: our JAX bf16/fp32 against the PyTorch reference pipeline, `sd21` shapes, random weights.

One variant per process (clean peak-memory numbers); each prints one JSON row per batch size:
  python -m benchmarks.bench_fp --impl jax --dtype bfloat16 --batches 1,16 --components 16
  PYTHONPATH=tests python -m benchmarks.bench_fp --impl torch --mode eager_fp16 --batches 1,16
  PYTHONPATH=tests python -m benchmarks.bench_fp --impl torch --mode compile_fp16 --batches 1,16
`python -m benchmarks.gpu fp` runs them all, one process each, into one results file.

The torch reference is diffusers' UNet2DConditionModel + AutoencoderKL with the SD-2.1-base config and
the test suite's PyTorch VRE (tests/reference, hence PYTHONPATH=tests), looped per face as the
OSDFace reference does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from benchmarks import results


def timed(fn, sync, *, warmup: int = 2, iters: int = 10) -> float:
  """Median wall milliseconds of ``fn()`` after ``warmup`` calls; ``sync`` waits for the device."""
  for _ in range(warmup):
    sync(fn())
  samples = []
  for _ in range(iters):
    t0 = time.perf_counter()
    sync(fn())
    samples.append((time.perf_counter() - t0) * 1e3)
  return statistics.median(samples)


def bench_jax(
  preset: str, dtype_name: str, batches: list[int], component_batches: set[int]
) -> list[dict]:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from quantface_jax.inference import DTYPES, cast_for_inference, make_restore_fn
  from quantface_jax.models import build

  dtype = DTYPES[dtype_name]
  t0 = time.perf_counter()
  model = build(preset)
  res = model.config.resolution
  init_s = time.perf_counter() - t0
  restore = make_restore_fn(model, dtype=dtype)
  graphdef, state = nnx.graphdef(model), cast_for_inference(model, dtype)
  sync = jax.block_until_ready
  rows = []
  for b in batches:
    lq = jax.random.uniform(jax.random.key(b), (b, res, res, 3), jnp.float32, -1.0, 1.0)
    t0 = time.perf_counter()
    sync(restore(lq))
    compile_s = time.perf_counter() - t0
    ms = timed(lambda: restore(lq), sync)
    row = dict(
      variant=f"jax_{dtype_name}",
      batch=b,
      latency_ms=ms,
      faces_per_s=b / ms * 1e3,
      compile_s=compile_s,
      init_s=init_s,
    )
    if b in component_batches:
      row["components_ms"] = _jax_components(graphdef, state, lq, dtype, sync)
    stats = jax.local_devices()[0].memory_stats() or {}
    row["peak_mem_gb"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


def _jax_components(graphdef, state, lq, dtype, sync) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  from flax import nnx

  def part(fn):
    return jax.jit(lambda s, *a: fn(nnx.merge(graphdef, s), *a))

  prompt_fn = part(lambda m, x: m.prompt(x, dtype))
  enc_fn = part(lambda m, x: m.vae.encode(x.astype(dtype)) * m.config.vae.scaling_factor)
  unet_fn = part(lambda m, z, p: m.unet(z, jnp.full((z.shape[0],), m.config.timestep), p))
  dec_fn = part(lambda m, z: m.vae.decode(z))
  prompt = sync(prompt_fn(state, lq))
  z = sync(enc_fn(state, lq))
  return {
    "vre": timed(lambda: prompt_fn(state, lq), sync),
    "vae_encoder": timed(lambda: enc_fn(state, lq), sync),
    "unet": timed(lambda: unet_fn(state, z, prompt), sync),
    "vae_decoder": timed(lambda: dec_fn(state, z), sync),
  }


def bench_torch(
  preset: str, mode: str, batches: list[int], component_batches: set[int], emit=None
) -> list[dict]:
  """Rows per batch size; ``emit(row)``, if given, gets each as soon as it is timed."""
  import torch
  from diffusers import AutoencoderKL, UNet2DConditionModel

  try:
    from reference.models import unet_diffusers_config, vae_diffusers_config
    from reference.osdface import EmbeddingChange
    from reference.vre import LQEmbedder
  except ModuleNotFoundError as err:
    if err.name != "reference":
      raise
    raise SystemExit("the torch reference is tests/reference: run with PYTHONPATH=tests") from None

  from quantface_jax.models import PRESETS, alpha_cumprod

  cfg = PRESETS[preset]
  dtype = torch.float16 if mode.endswith("fp16") else torch.float32
  dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cuda.matmul.allow_tf32 = False
  unet = UNet2DConditionModel(**unet_diffusers_config(cfg.unet)).to(dev, dtype).eval()
  vae = AutoencoderKL(**vae_diffusers_config(cfg.vae)).to(dev, dtype).eval()
  vre = LQEmbedder(cfg.vre).to(dev, dtype).eval()
  embed = EmbeddingChange(cfg.vre.embed_dim, cfg.embedding_hidden, cfg.unet.cross_attention_dim).to(
    dev, dtype
  )
  a = alpha_cumprod(cfg)
  scale = cfg.vae.scaling_factor
  if mode.startswith("compile"):
    unet = torch.compile(unet)
    vae.encoder = torch.compile(vae.encoder)
    vae.decoder = torch.compile(vae.decoder)

  def prompt_of(lq):
    return embed(vre(lq).to(dev, dtype))  # the reference VRE loops over faces

  @torch.no_grad()
  def restore(lq):
    p = prompt_of(lq)
    z = vae.encode(lq).latent_dist.mean * scale
    eps = unet(z, cfg.timestep, encoder_hidden_states=p).sample
    x0 = ((z.double() - (1 - a) ** 0.5 * eps.double()) / a**0.5).to(dtype)
    return vae.decode(x0 / scale).sample.clamp(-1, 1) * 0.5 + 0.5

  sync = lambda _: torch.cuda.synchronize() if dev.type == "cuda" else None
  rows = []
  for b in batches:
    lq = torch.rand(b, 3, cfg.resolution, cfg.resolution, device=dev, dtype=dtype) * 2 - 1
    if dev.type == "cuda":
      torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    sync(restore(lq))
    compile_s = time.perf_counter() - t0
    ms = timed(lambda: restore(lq), sync)
    row = dict(
      variant=f"torch_{mode}",
      batch=b,
      latency_ms=ms,
      faces_per_s=b / ms * 1e3,
      compile_s=compile_s,
      peak_mem_gb=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan"),
    )
    if b in component_batches:
      with torch.no_grad():
        p = prompt_of(lq)
        z = vae.encode(lq).latent_dist.mean * scale
        row["components_ms"] = {
          "vre": timed(lambda: prompt_of(lq), sync),
          "vae_encoder": timed(lambda: vae.encode(lq).latent_dist.mean, sync),
          "unet": timed(lambda: unet(z, cfg.timestep, encoder_hidden_states=p).sample, sync),
          "vae_decoder": timed(lambda: vae.decode(z).sample, sync),
        }
    print(json.dumps(row), flush=True)
    rows.append(row)
    if emit:
      emit(row)
  return rows


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--impl", choices=["jax", "torch"], required=True)
  p.add_argument(
    "--preset", default="sd21", help="model shapes (random weights): sd21 | mini | tiny"
  )
  p.add_argument("--dtype", default="bfloat16", help="jax: float32 | bfloat16")
  p.add_argument(
    "--mode", default="eager_fp16", help="torch: eager_fp16 | eager_fp32 | compile_fp16"
  )
  p.add_argument("--batches", default="1,16")
  p.add_argument(
    "--components", default="", help="batch sizes that also get a per-component breakdown"
  )
  p.add_argument("--out", default=None, help="results file the rows are added to")
  args = p.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  comps = {int(b) for b in args.components.split(",") if b}
  rows = (
    bench_jax(args.preset, args.dtype, batches, comps)
    if args.impl == "jax"
    else bench_torch(args.preset, args.mode, batches, comps)
  )
  if args.out:
    results.append(args.out, rows)


if __name__ == "__main__":
  main()
