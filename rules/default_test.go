package rules

import (
	"context"
	"sync"
	"testing"
)

var (
	schemaOnce sync.Once
	schemaDDL  string
	schemaErr  error
)

// storeDDL is the center store's schema, built once per test binary.
func storeDDL(t testing.TB) string {
	t.Helper()
	schemaOnce.Do(func() { schemaDDL, schemaErr = StoreSchema(context.Background()) })
	if schemaErr != nil {
		t.Fatalf("StoreSchema: %v", schemaErr)
	}
	return schemaDDL
}

func TestDefaultPackPassesCheck(t *testing.T) {
	p, err := Default()
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	rep, err := Check(context.Background(), p, storeDDL(t))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Log("\n" + rep.Format(p.Source))
	if !rep.OK() {
		t.Fatalf("default pack fails its own fixtures")
	}
}
