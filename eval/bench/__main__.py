"""``python -m eval.bench <benchmark> [options]``: see :mod:`eval.bench` for the benchmarks."""

from eval.bench import main

if __name__ == "__main__":
    main()
