package main

import (
	"io"
	"strings"
	"testing"
)

// TestMalformedLLMLimitSettingsAreRefused: a malformed FX table or limit
// field stops the program at start, naming the variable, instead of
// falling back to a default in silence.
func TestMalformedLLMLimitSettingsAreRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env     map[string]string
		wantErr string // "" = accepted
	}{
		{map[string]string{}, ""},
		{map[string]string{"PEAKDESK_FX_RATES": "CNY=7.1,EUR=0.92", "PEAKDESK_LLM_MAX_TOKENS_PARAM": "max_completion_tokens"}, ""},
		{map[string]string{"PEAKDESK_FX_RATES": "CNY=seven"}, "PEAKDESK_FX_RATES"},
		{map[string]string{"PEAKDESK_FX_RATES": "CNY=0"}, "PEAKDESK_FX_RATES"},
		{map[string]string{"PEAKDESK_FX_RATES": "yuan=7.2"}, "PEAKDESK_FX_RATES"},
		{map[string]string{"PEAKDESK_LLM_MAX_TOKENS_PARAM": "max_output_tokens"}, "PEAKDESK_LLM_MAX_TOKENS_PARAM"},
	} {
		getenv := func(k string) string { return tc.env[k] }
		c, err := parseFlags("dev", nil, io.Discard, getenv, true)
		switch {
		case tc.wantErr == "" && err != nil:
			t.Errorf("%v: %v", tc.env, err)
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("%v: err = %v, want one naming %s", tc.env, err, tc.wantErr)
		case tc.wantErr == "" && len(tc.env) == 0 && (c.FXRates != "CNY=7.2" || c.LLMMaxTokensParam != "max_tokens"):
			t.Errorf("defaults: FX %q, max tokens param %q", c.FXRates, c.LLMMaxTokensParam)
		}
	}
}
