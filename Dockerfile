# apigw demo image: the module built against Debian bookworm's nginx and
# loaded by tools/demo.py, the same steps as `make run`.
#   docker build -t apigw-demo .
#   docker run --rm -it -p 8080:8080 apigw-demo
FROM debian:bookworm

ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src/apigw

# The packages are the Makefile's DEBS list (`make deps` installs them), so
# the image and a developer's machine always get the same set.
COPY Makefile ./
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends make \
 && make deps \
 && rm -rf /var/lib/apt/lists/*

COPY . .
RUN make build

EXPOSE 8080
# demo.py stops nginx, the upstream and redis on SIGTERM (docker stop) and
# on SIGINT (Ctrl-C); it listens on all interfaces so -p 8080:8080 works.
STOPSIGNAL SIGTERM
CMD ["/usr/bin/python3", "tools/demo.py", "--listen", "0.0.0.0:8080"]
