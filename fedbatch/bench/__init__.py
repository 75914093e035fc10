"""`python -m fedbatch.bench`: the same federated work through every runner, side by side."""
