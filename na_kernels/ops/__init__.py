"""Public ops: argument checks, torch.library registration, autograd, backend dispatch."""
