"""``python -m perturbsets`` runs the command-line interface (also what ``torchrun -m perturbsets`` starts)."""

from perturbsets.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
