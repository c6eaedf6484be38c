"""Lowering to the integer IR, the reference interpreter, memory planning and C emitters."""
