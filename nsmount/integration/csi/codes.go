package csi

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nsmount/nsmount/nsmount"
)

// codeOf maps an error to the gRPC code kubelet acts on: nsmount's error
// classes, and the context's.
func codeOf(err error) codes.Code {
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return s.Code()
	}
	switch {
	case errors.Is(err, nsmount.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, nsmount.ErrInvalidArgument), errors.Is(err, nsmount.ErrUnsafePath):
		return codes.InvalidArgument
	case errors.Is(err, nsmount.ErrTargetNotFound), errors.Is(err, nsmount.ErrNotMounted):
		return codes.NotFound
	case errors.Is(err, nsmount.ErrDenied):
		return codes.PermissionDenied
	case errors.Is(err, nsmount.ErrUnreachable):
		return codes.Unavailable
	case errors.Is(err, nsmount.ErrStaleState):
		return codes.FailedPrecondition
	}
	return codes.Internal
}

// statusOf turns err into a gRPC status error with one line of text.
func statusOf(err error) error {
	if err == nil {
		return nil
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return err
	}
	return status.Error(codeOf(err), oneLine(err))
}

// final reports whether kubelet takes an error of code c as final: it then
// assumes nothing was mounted and never calls NodeUnpublishVolume for it.
// For the others (a timeout, an unavailable server, ...) the volume's state
// is uncertain to kubelet, and it unpublishes later.
func final(c codes.Code) bool {
	switch c {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return false
	}
	return true
}
