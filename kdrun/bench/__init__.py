"""`kdrun bench`: kdrun's training path side by side with a plain PyTorch loop, in one process."""
