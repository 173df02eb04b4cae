"""Settings for the whole test session."""

import signal

# Tests send SIGINT to a `kolk` they started, as Ctrl-C in a terminal would. A shell that runs
# the suite in the background (`make test &`, a CI runner without job control) ignores SIGINT,
# and an ignored signal stays ignored in every child: Python then never installs its Ctrl-C
# handler there and the child never sees the test's Ctrl-C. Children start as from a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
