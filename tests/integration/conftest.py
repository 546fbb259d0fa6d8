"""Integration-suite hooks: every VMM a test starts in this process is audited from /proc right after
its start (tests/support/vmm_audit.py: its own cgroup; a jailed firecracker's uid, root and PID
namespace). A server's VMMs are audited by ``ServerProcess.create``."""

from support.vmm_audit import install_start_audit

install_start_audit()
