"""One file per training method of the SDXS paper (Figs. 2-3), all on ``trainers.core``."""
