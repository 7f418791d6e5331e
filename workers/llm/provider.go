package llm

import (
	"errors"
	"slices"
	"strings"
)

// Provider is an OpenAI-compatible endpoint and the chain of models to ask
// there, primary first.
type Provider struct {
	// BaseURL of the API, e.g. https://api.example.com/v1.
	BaseURL string
	// APIKey is sent as a bearer token; never logged.
	APIKey string
	// Models is the chain, primary first, then the fallbacks.
	Models []string
	// MaxTokensParam is the request field the completion limit is sent in:
	// ParamMaxTokens (default, "") or ParamMaxCompletionTokens.
	MaxTokensParam string
}

// Validate reports what is missing.
func (p Provider) Validate() error {
	switch {
	case p.BaseURL == "":
		return errors.New("llm: provider: BaseURL is required")
	case len(p.Models) == 0 || slices.Contains(p.Models, ""):
		return errors.New("llm: provider: Models must name at least one model and no empty one")
	case !ValidMaxTokensParam(p.MaxTokensParam):
		return errors.New("llm: provider: MaxTokensParam must be max_tokens or max_completion_tokens")
	}
	return nil
}

// ParseModels splits a model chain written "primary,secondary".
func ParseModels(s string) []string {
	var models []string
	for m := range strings.SplitSeq(s, ",") {
		if m = strings.TrimSpace(m); m != "" {
			models = append(models, m)
		}
	}
	return models
}
