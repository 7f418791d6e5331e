package faq_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/peakdesk/peakdesk/workers/faq"
)

func TestParse(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, file, data string
		want             []string // question=answer[tags...]
	}{
		{"csv with header, BOM and tags", "faq.csv",
			"\ufeffquestion,answer,tags\n多久发货？,48小时内发货。,发货|时效\n\"Can I, pay later?\",\"Yes, with Huabei.\"\n",
			[]string{"多久发货？=48小时内发货。[发货 时效]", "Can I, pay later?=Yes, with Huabei.[]"}},
		{"csv without header", "x.csv", "q1,a1\n\nq2,a2,t1;t2\n",
			[]string{"q1=a1[]", "q2=a2[t1 t2]"}},
		{"json", "faq.json", `[{"question":" q1 ","answer":"a1","tags":["x","y|z"]},{"question":"q2","answer":"a2","tags":"t"}]`,
			[]string{"q1=a1[x y z]", "q2=a2[t]"}},
		{"json guessed from content", "faq.txt", ` [{"question":"q","answer":"a"}]`, []string{"q=a[]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			entries, err := faq.Parse(tc.file, strings.NewReader(tc.data))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range entries {
				got = append(got, e.Question+"="+e.Answer+"["+strings.Join(e.Tags, " ")+"]")
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct{ file, data string }{
		"empty file":          {"a.csv", ""},
		"only a header":       {"a.csv", "question,answer\n"},
		"one field":           {"a.csv", "just a question\n"},
		"four fields":         {"a.csv", "q,a,t,extra\n"},
		"empty answer":        {"a.csv", "q,  \n"},
		"json not an array":   {"a.json", `{"question":"q","answer":"a"}`},
		"json missing answer": {"a.json", `[{"question":"q"}]`},
		"json bad tags":       {"a.json", `[{"question":"q","answer":"a","tags":3}]`},
		"question too long":   {"a.csv", strings.Repeat("问", faq.MaxQuestionRunes+1) + ",a\n"},
	} {
		if _, err := faq.Parse(tc.file, strings.NewReader(tc.data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
