"""Checks for the notebooks' exercises, one module per lesson.

Each check runs a learner's function against real sockets and adversarial
peers, prints one ✓/✗ line per scenario and returns a CheckResult. The
tutorial's naive version of each function sits beside its check, so tests can
prove that the check catches exactly the bugs the lesson is about.
"""
