package nri

// GoneContainers is goneContainers, for the external tests.
var GoneContainers = goneContainers
