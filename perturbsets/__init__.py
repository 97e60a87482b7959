"""perturbsets: learn perturbation sets from paired data (Wong & Kolter, ICLR 2021)."""

__version__ = "0.1.0"
