"""First Order Motion Model (Siarohin et al. 2019) in Flax, NHWC."""
