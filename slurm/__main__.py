"""``python -m epicslurm``: the same as ``epic-slurm``."""

from epicslurm.cli import main

if __name__ == "__main__":
    main()
