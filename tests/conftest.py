import os
import sys

# Tests import the shared bounds helper as `from tests.stats import ...` or `from stats import ...`.
sys.path.insert(0, os.path.dirname(__file__))
