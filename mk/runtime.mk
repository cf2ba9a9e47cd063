# runtime area: owned by the runtime work; see the Makefile for the variables to append to.
