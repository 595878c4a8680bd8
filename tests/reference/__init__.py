"""PyTorch references for the parity tests (test-only): the VRE and the OSDFace one-step pipeline."""
