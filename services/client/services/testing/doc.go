// Package testing holds the fixture tests of the services package.
package testing
