package dashboard

import (
	"fmt"
	"net/http"

	"golang.org/x/text/language"
)

// Languages of the console. Every text lives in textEN and textZH.
const (
	langEN = "en"
	langZH = "zh"
)

var (
	texts       = map[string]map[string]string{langEN: textEN, langZH: textZH}
	langMatcher = language.NewMatcher([]language.Tag{language.English, language.Chinese})
)

// langCookie remembers the language an operator switched to.
const langCookie = "pd_lang"

// pickLang chooses the page language: the operator's switch (a cookie),
// else the browser's Accept-Language, else English.
func pickLang(r *http.Request) string {
	if c, err := r.Cookie(langCookie); err == nil && texts[c.Value] != nil {
		return c.Value
	}
	tags, _, err := language.ParseAcceptLanguage(r.Header.Get("Accept-Language"))
	if err != nil || len(tags) == 0 {
		return langEN
	}
	_, i, _ := langMatcher.Match(tags...)
	if i == 1 {
		return langZH
	}
	return langEN
}

// translate returns the text of key in lang, formatted with args; a key
// missing in lang falls back to English, then to the key itself.
func translate(lang, key string, args ...any) string {
	s, ok := texts[lang][key]
	if !ok {
		if s, ok = textEN[key]; !ok {
			s = key
		}
	}
	if len(args) > 0 {
		return fmt.Sprintf(s, args...)
	}
	return s
}
