// Package testing holds the fixture tests of the transfers package.
package testing
