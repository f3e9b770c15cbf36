package service

import (
	"testing"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
