"""quant.students: the structural QD-LoRA student is the calibrated one's program."""

from quantface_jax.quant import students


def test_structural_student_has_the_calibrated_students_structure():
  assert students.structure_matches("tiny") == dict(graphdef=True, state=True, bits=True)
