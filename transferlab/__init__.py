"""transferlab: factors of transferability for generic ConvNet representations."""

__version__ = "0.1.0"
