"""fedray: FedAvg (McMahan et al. 2017, Algorithm 1) on MNIST, run as Ray-parallel experiments."""

__version__ = "0.1.0"
