"""The CPU fast paths, each measured against what torch does alone (docs/benchmarks.md).

- `gru`: the GRU's training layer with one recurrent product a step and a hand-written backward.
- `dropout`: dropout masks from 16-bit lanes of 64-bit random words.
- `packed`: products with a fixed weight in oneDNN's packed layout, and int8 step weights.
- `memory`: glibc's malloc told to keep freed blocks for the next training step.
"""
