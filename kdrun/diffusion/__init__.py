"""Progressive distillation of a diffusion sampler (Salimans & Ho, ICLR 2022): `kdrun diffusion`.

A v-parameterised teacher with the cosine schedule is sampled with deterministic DDIM; a student
learns to match two teacher DDIM steps in one (Algorithm 2), becomes the next teacher, and the
number of sampling steps halves every round. The run compares, at every step count, the teacher
sampled with DDIM (the baseline) with the distilled student, by FID.

Nothing heavy is imported here: `kdrun report` reads `results` without torch.
"""
