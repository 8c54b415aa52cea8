"""Every exit code of the `leadsync` process, daemon and commands alike, named once.

The sysexits.h codes where one fits, so scripts and systemd units can tell a bad
command line (64) from a daemon that is not there (69) from "try again" (75). It
lives in actors, the lowest layer that exits with a code (`Fatal`), so the daemon,
its supervisor and the commands all import it from here. docs/ARCHITECTURE.md and
docs/systemd.md list what each code means command by command.
"""

EXIT_FAILURE = 1
"""A command ran but did less than asked: nothing found or matched, CSV rows skipped."""
EXIT_CONFIG = 2
"""The config (or a model file it names) is invalid; systemd does not restart on it."""
EXIT_USAGE = 64
"""EX_USAGE: the command line asked for something malformed."""
EXIT_DATAERR = 65
"""EX_DATAERR: a model file or a backup that cannot be used."""
EXIT_NOINPUT = 66
"""EX_NOINPUT: an input file that cannot be read."""
EXIT_UNAVAILABLE = 69
"""EX_UNAVAILABLE: the daemon's admin API could not be reached, or refused the request."""
EXIT_SOFTWARE = 70
"""EX_SOFTWARE: an actor kept crashing, or failed in a way no restart fixes."""
EXIT_CANNOT_LISTEN = 71
"""EX_OSERR: the system refused a listener's address."""
EXIT_STORAGE = 73
"""EX_CANTCREAT: the database, or an output file, could not be opened or written."""
EXIT_TEMPFAIL = 75
"""EX_TEMPFAIL: something else holds what a command needs (a rebuild, the data dir); retry."""
EXIT_DATA_DIR_HELD = 77
"""EX_NOPERM: another process holds the data dir's lock; the daemon does not start."""
EXIT_GRACE_EXCEEDED = 124
"""As timeout(1): the drain outlived shutdown_grace and was cut; acknowledged input is safe."""
EXIT_INTERRUPTED = 130
"""128 + SIGINT: a command interrupted by Ctrl-C, as a shell reports it."""
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: a command whose output's pipe closed, as a shell reports it."""
