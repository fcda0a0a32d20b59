# A Debian KVM host with the agent's package installed, for tests/deploy (containers.agent_host).
# Build context: this file and domus-agent.deb (docker/agent/build-deb.sh).
FROM debian:bookworm
LABEL org.domus.test=agent-host
ENV DEBIAN_FRONTEND=noninteractive
# What an operator installs on a KVM host first (the package's Recommends). This layer is the
# expensive one (~300 MB); it stays cached while the line below is unchanged.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends \
        libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils
# The package, its dependencies resolved by apt from Debian (python3, python3-libvirt). The .deb
# stays in the image, so a test can install it again without a network.
COPY domus-agent.deb /root/domus-agent.deb
RUN apt-get update -qq && apt-get install -y --no-install-recommends /root/domus-agent.deb
