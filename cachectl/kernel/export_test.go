package kernel

// DevOf is devOf, for tests.
var DevOf = devOf

// ClientVolumes and RetirePlan are clientVolumes and retirePlan, for tests.
var (
	ClientVolumes = clientVolumes
	RetirePlan    = retirePlan
)
