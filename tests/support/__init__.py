"""Test harnesses shared by tests/unit and tests/integration (never shipped in the product package).

- ``netns``     throwaway network namespaces and guests emulated by veth pairs (was
                ``clawpot.network.testing``).
- ``tcp_to_unix``  a loopback TCP port relaying to a unix socket (the E2B SDK only dials TCP; the
                server under test listens in its namespace).
- ``fake_vmm``  a VMM backend whose "hypervisor" is a real process running the real agent on a unix
                socket: started, crashed, signalled and re-attached without root or a VM.

``tests/conftest.py`` puts ``tests/`` on ``sys.path``, so both test trees import ``support.*``.
"""
