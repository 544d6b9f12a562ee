"""idtprior.stages."""
