# controller area: owned by the controller work; see the Makefile for the variables to append to.
