// Package images builds zmesh's container images without a container
// daemon: each binary, built static, goes into a single layer on an empty
// base, with the image's configuration (entrypoint, user, PATH, labels)
// written by hand. Every timestamp in an image is the source's commit time,
// so two builds of one source give the same digests. The images are written
// as an OCI image layout and as tarballs `docker load` reads, and pushed to a
// registry on request. It imports nothing of zmesh's: the program that runs
// it is in build/.
package images
