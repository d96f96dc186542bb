package cni

// RecordedAddrs is recordedAddrs, for the tests.
var RecordedAddrs = recordedAddrs
