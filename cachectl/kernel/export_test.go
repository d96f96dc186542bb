package kernel

// DevOf is devOf, for tests.
var DevOf = devOf
