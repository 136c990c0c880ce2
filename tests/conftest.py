"""Test-session settings."""

import torch

# pytest-xdist runs one worker per core: a second intra-op thread per worker only oversubscribes the machine
# (small ops then wait on each other's threads), so every worker computes on one thread.
torch.set_num_threads(1)
