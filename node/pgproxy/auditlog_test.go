package pgproxy

import "github.com/ferryhq/ferry/node/audit"

// testAudit adapts node/audit's *Log to AuditLog, as the node does.
type testAudit struct{ *audit.Log }

func (a testAudit) QueryRecorder(id int64, onFail func(error)) QueryRecorder {
	return a.Log.Recorder(id, onFail)
}
