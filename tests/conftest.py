"""Tests are laid out like the package (tests/engine for codegen/engine, ...); `helpers` and the
engine's scripted model are importable from every folder."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
