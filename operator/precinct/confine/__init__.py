"""Kernel confinement of plugin processes on a single host.

Layers (docs/confinement.md): an unprivileged uid per plugin, cgroup limits
(v2 where delegated, v1 otherwise), a PID + mount + network + IPC + UTS
namespace per instance whose PID 1 is a tiny trusted init, Landlock, a
seccomp BPF filter, and a network relay owned by the supervisor.

Keep this module import-free: `python -m precinct.confine.init` runs once per
plugin instance and must start fast.
"""
