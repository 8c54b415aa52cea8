"""The parts of bench/sustained.py: the traffic it sends (traffic), the open-loop load
generator in a process of its own (load), what it samples from the daemon each second
(observe), one run of the real daemon at one rate (run), its report (report) and its
chart (chart)."""
