"""``python -m train ...`` is ``epic-train ...`` (for launchers that want a module)."""

from train.cli import train_main

if __name__ == "__main__":
    train_main()
