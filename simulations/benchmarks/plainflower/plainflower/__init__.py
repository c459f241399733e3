"""A minimal plain-Flower FedAvg app (the baseline of ``bench_scale.py``)."""
