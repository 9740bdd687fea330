"""hilrl: teach robot arms with people in the loop."""

__version__ = "0.1.0"
