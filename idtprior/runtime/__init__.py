"""idtprior.runtime."""
