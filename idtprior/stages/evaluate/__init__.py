"""idtprior.stages.evaluate."""
