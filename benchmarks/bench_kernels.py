"""The kernel benchmark: dropkit's counter-based dropout against torch eager, torch.compile and
x.clone(). Its code ships in the package as `dropkit.bench` so that `dropkit bench` works from any
installation; this script is the same program.

    python benchmarks/bench_kernels.py [--quick] [--threads N] [--no-compile] [--device cuda]
"""

from dropkit.bench import main

if __name__ == "__main__":
    main()
