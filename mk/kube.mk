# kube area: owned by the kube work; see the Makefile for the variables to append to.
