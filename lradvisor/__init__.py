"""lradvisor: can an LLM, asked between epochs, schedule a network's learning rate better than StepLR?"""

__version__ = "0.1.0"
