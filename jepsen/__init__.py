"""The fault-injection harness (DESIGN.md §9): histories of operations and the checkers that
judge them. Not part of the installed ``kolk`` package; tests import it from the repo root."""
